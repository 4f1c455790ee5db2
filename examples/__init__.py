"""Complete applications of the saga runtime that are not about orders.

`saga_actors.examples.trip`: booking a trip (flight, hotel, car), each with
its cancellation; run it with `python -m saga_actors.examples.trip`.
"""
