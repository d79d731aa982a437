//! `understudy`: run a device of a project group, a local lab, and control a
//! group from the command line.

use std::process::ExitCode;

fn main() -> ExitCode {
    understudy::main_with(std::env::args_os())
}
