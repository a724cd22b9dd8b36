"""Data sources for the shared loop; see `base.DataSource` for the contract."""
from flaxgen.data.base import DataError, DataSource, make_source

__all__ = ["DataError", "DataSource", "make_source"]
