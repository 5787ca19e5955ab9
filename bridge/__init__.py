"""pumble-bridge: e-commerce webhooks in, Pumble messages out.

receive (web) -> verify and normalize (sources) -> route (routing) -> render (render)
-> enqueue (queue) -> deliver (delivery, in the worker) -> Pumble (pumble)
"""

__version__ = "0.1.0"
