"""Coupling rules of the dependency graph, one module per op family; :class:`GraphBuilder` combines them."""
