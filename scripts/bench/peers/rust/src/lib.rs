// Only here so the package has a target before the examples arrive.
