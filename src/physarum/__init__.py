"""physarum: private libp2p overlays on trio (pnet, Noise, yamux, Kademlia, ping monitor)."""

__version__ = "0.1.0"
