"""Applications shipped with sockapp, beyond the tutorial's search (``sockapp.search``)."""
