//! `understudy-discovery`: the discovery service of one device, as its own process
//! (`understudy node --services discovery` under another name). Takes the same
//! arguments as `understudy node`.

use std::process::ExitCode;

fn main() -> ExitCode {
    understudy::service_main("discovery")
}
