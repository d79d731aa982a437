//! `understudy-election`: the election service of one device, as its own process
//! (`understudy node --services election` under another name). Takes the same
//! arguments as `understudy node`.

use std::process::ExitCode;

fn main() -> ExitCode {
    understudy::service_main("election")
}
