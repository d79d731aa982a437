//! The project-sync gRPC messages (proto/understudy/v1/project.proto) and
//! what the server and the client do with them once decoded. The first byte
//! picks what the rest is:
//!
//! - one request or reply message (prost): a value or an error, never a
//!   panic, and a decoded value round-trips; requests then go through the
//!   server's checks (group name, the fetch's resume offset);
//! - a submit stream (length-delimited `SubmitChunk`s), through the
//!   server's checks: header first and valid, content within its declared
//!   size, SHA-256 matching — accepted content is exactly what was declared;
//! - a fetch stream (length-delimited `FetchChunk`s), through the client's
//!   assembly: accepted content has the head's size and SHA-256;
//! - the trailers of a "not the server" refusal (server, term, address, one
//!   a line), as the client reads them to find who serves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use understudy_fuzz::{pb_round_trip, pb_stream};
use understudy_project_sync::client::{ClientError, FetchAssembly, Fetched};
use understudy_project_sync::core::MAX_PROJECT_SIZE;
use understudy_project_sync::local::sha256_hex;
use understudy_project_sync::pb::{self, submit_chunk::Part};
use understudy_project_sync::server::{check_submit_header, fetch_start, submit_content};
use understudy_project_sync::tonic::Status;
use understudy_project_sync::tonic::metadata::MetadataValue;
use understudy_protocol::{GroupName, grpc};

/// The server's first check of every request: the group it names.
fn group(name: &str) {
    let _ = name.parse::<GroupName>();
}

fn submit_stream(bytes: &[u8]) {
    let mut chunks = pb_stream::<pb::SubmitChunk>(bytes).into_iter();
    let Some(pb::SubmitChunk {
        part: Some(Part::Header(header)),
    }) = chunks.next()
    else {
        return; // refused: the first message must be the header
    };
    group(&header.group);
    let Ok(mut upload) = check_submit_header(&header, MAX_PROJECT_SIZE) else {
        return;
    };
    for chunk in chunks {
        if submit_content(&mut upload, chunk).is_err() {
            return;
        }
    }
    if let Ok(data) = upload.finish() {
        assert_eq!(data.len() as u64, header.size);
        assert_eq!(sha256_hex(&data), header.sha256);
    }
}

fn fetch_stream(bytes: &[u8]) {
    let mut assembly = FetchAssembly::default();
    for chunk in pb_stream::<pb::FetchChunk>(bytes) {
        match assembly.take(chunk) {
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => return,
        }
    }
    if let Ok(Fetched::Content(head, data)) = assembly.finish() {
        assert_eq!(data.len() as u64, head.size);
        assert_eq!(sha256_hex(&data), head.sha256);
    }
}

fn fetch_request(req: &pb::FetchRequest) {
    group(&req.group);
    for (revision, size) in [
        (req.resume_revision, 0),
        (req.resume_revision, 1 << 20),
        (1, 7),
    ] {
        if let Ok(start) = fetch_start(req, revision, size) {
            assert!(start <= size, "a fetch would start past the end");
        }
    }
}

fn not_server_trailers(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.splitn(3, '\n');
    let mut status = Status::failed_precondition("not the server");
    for key in [grpc::SERVER, grpc::TERM, grpc::SERVER_ADDRESS] {
        if let Some(v) = lines.next().and_then(|l| MetadataValue::try_from(l).ok()) {
            status.metadata_mut().insert(key, v);
        }
    }
    match ClientError::from(status) {
        ClientError::NotServer { server, .. } => {
            if let Some(s) = server {
                assert!(text.starts_with(s.device.as_str()));
            }
        }
        other => panic!("a refusal for not serving became {other:?}"),
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&which, rest)) = bytes.split_first() else {
        return;
    };
    match which % 13 {
        0 => {
            if let Some(r) = pb_round_trip::<pb::DescribeRequest>(rest) {
                group(&r.group);
            }
        }
        1 => {
            if let Some(r) = pb_round_trip::<pb::FetchRequest>(rest) {
                fetch_request(&r);
            }
        }
        2 => {
            if let Some(r) = pb_round_trip::<pb::WatchRequest>(rest) {
                group(&r.group);
            }
        }
        3 => {
            pb_round_trip::<pb::SubmitChunk>(rest);
        }
        4 => {
            pb_round_trip::<pb::DescribeReply>(rest);
        }
        5 => {
            pb_round_trip::<pb::FetchChunk>(rest);
        }
        6 => {
            pb_round_trip::<pb::SubmitReply>(rest);
        }
        7 => {
            pb_round_trip::<pb::WatchEvent>(rest);
        }
        8 => {
            pb_round_trip::<pb::Revision>(rest);
        }
        9 => {
            pb_round_trip::<pb::SubmitHeader>(rest);
        }
        10 => submit_stream(rest),
        11 => fetch_stream(rest),
        _ => not_server_trailers(rest),
    }
});
