// filled in by the domain model tests
