//! The blob conformance suite on every blob backend (memory and the local filesystem here;
//! object stores join with their servers).

larder_testkit::blob_conformance!(memory);
larder_testkit::blob_conformance!(filesystem);
