"""The Kozani Lifelong Learning Centre connector (family ``lifelong_learning``): REST/JSON
over mutual TLS."""
