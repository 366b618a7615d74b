#[path = "../src/lab/mod.rs"]
#[allow(dead_code, reason = "the tests use part of the lab's API")]
mod lab;
