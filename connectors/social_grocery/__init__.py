"""The Kozani social grocery connector (family ``social_grocery``): REST/JSON, API key."""
