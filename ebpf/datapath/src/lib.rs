//! Empty on purpose: the programs are the `flowgate-datapath` bin (src/main.rs). This lib lets
//! the agent declare the crate as a build-dependency, so cargo reruns its build script.
#![no_std]
