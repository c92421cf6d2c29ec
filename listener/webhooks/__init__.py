"""The sink: one HTTP/1.1 response read with every part bounded (``response``), the keep-alive
transport (``transport``), one endpoint's delivery loop (``endpoint``), and every endpoint together
(``sink``)."""
