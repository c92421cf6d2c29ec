"""The sink: HTTP transport with bounded reads (``transport``), one endpoint's delivery loop
(``endpoint``), and every endpoint together (``sink``)."""
