"""The client side of a registry: HTTP client, config and login, the blob cache, fetch, publish,
skill references and resolution, the Hub, skill projects, trust and attestations."""
