"""Who may do what: topic rules and patterns, who a connection or request is (sessions, tokens, API
keys), revocation, and the endpoints that hand out tokens and list topics."""
