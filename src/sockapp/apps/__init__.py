"""Applications shipped with sockapp, beyond the tutorial's search (``sockapp.apps.search``)."""
