"""The domain's rules over fakes: the service, claims, listing, access, text and layout."""
