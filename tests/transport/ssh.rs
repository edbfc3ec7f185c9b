//! SSH transport tests.
