//! The conformance suite, stamped for every backend.

larder_testkit::conformance!(memory);
larder_testkit::conformance!(sqlite);
larder_testkit::conformance!(postgres);
