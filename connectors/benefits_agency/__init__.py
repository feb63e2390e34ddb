"""ΟΠΕΚΑ (benefits agency) connector: SOAP 1.2 + WS-Security over a vendored WSDL."""
