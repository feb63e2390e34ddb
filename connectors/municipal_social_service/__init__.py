"""Municipal social service connector: REST/JSON signed per Standard Webhooks."""
