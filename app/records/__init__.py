"""The records: the database and its tables, model versions, the model store, the follower that
keeps each process serving the active version, copying records between machines, migrations."""
