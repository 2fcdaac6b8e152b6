"""Model environments: a model directory of G that tvreg manages, with its ``tvreg.lock``.

Modules, in pipeline order:

- :mod:`.operations` — install, uninstall, upgrade, lock, sync; each resolves once, checks
  (plans), fetches and applies; ``dry_run`` stops before fetching.
- :mod:`.plan` — the check stage: the resulting set, refusals, bytes to download, memory.
- :mod:`.skillset` — the locked plus requested skills, keyed by identity; owns closing them.
- :mod:`.weights` — the one ω = |D|/|G| rule, output dtypes, method parameters.
- :mod:`.materialise` — the tensor stream (Σ ω_k τ_k applied to G) into a staged tree, then the swap.
- :mod:`.staging` — staged trees beside the model: fill with links, clean up after kills.
- :mod:`.lockfile`, :mod:`.store`, :mod:`.environment`, :mod:`.verify`, :mod:`.modelcard`.
- :mod:`.noop` — the torch-free "Nothing to change" shortcut.
- Around an environment: :mod:`.check` (interference), :mod:`.sweep` (ω grids), :mod:`.evaluate`
  (eval hooks), :mod:`.policy` (``tvreg.toml``), :mod:`.export` (PEFT export).
"""
