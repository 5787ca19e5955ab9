"""Delivery: the job a worker runs for each notification, as steps run in order.

- ``job``: the RQ job (``deliver``, the function queued jobs name) and what a failure means;
- ``attempt``: one run's state, shared by the steps, and how a run ends;
- ``steps``: the steps (docs/delivery.md lists them);
- ``actions``: what a route asks Pumble to do, as data the steps read;
- ``deliverer``: what a worker process sends with, built from the config the worker was given.
"""

from bridge.delivery.attempt import DeadLetter
from bridge.delivery.deliverer import Deliverer
from bridge.delivery.job import DeliveryJob, deliver

__all__ = ["DeadLetter", "Deliverer", "DeliveryJob", "deliver"]
