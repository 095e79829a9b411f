use super::*;

/// What gRPC C-core 1.85 (grpcio) sent for `unix:/tmp/cap/s.sock`, captured:
/// literals with incremental indexing and new names, `:authority` being
/// `tmp%2Fcap%2Fs.sock`.
const CCORE_BLOCK: &str = "40053a70617468062f782e592f5a400a3a617574686f7269747912746d70253246636170253246732e736f636b8386400c636f6e74656e742d74797065106170706c69636174696f6e2f677270634002746508747261696c6572734014677270632d6163636570742d656e636f64696e67176964656e746974792c206465666c6174652c20677a6970400c677270632d74696d656f7574043939376d400a757365722d6167656e7430677270632d707974686f6e2f312e38352e3320677270632d632f35382e302e3020286c696e75783b2063687474703229";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame_header(&mut out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
    out
}

fn settings() -> Vec<u8> {
    frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])
}

fn field(name: &str, value: &[u8]) -> Field {
    Field {
        name: name.as_bytes().to_vec(),
        value: value.to_vec(),
        sensitive: false,
    }
}

fn request(authority: &[u8]) -> Vec<Field> {
    vec![
        field(":method", b"POST"),
        field(":scheme", b"http"),
        field(":path", b"/sealbroker.v1.SealService/ListKeys"),
        field(":authority", authority),
        field("content-type", b"application/grpc"),
        field("te", b"trailers"),
    ]
}

fn block_of(fields: &[Field]) -> Vec<u8> {
    let mut block = Vec::new();
    hpack::encode(fields, &mut block);
    block
}

/// What the server makes of the rewritten bytes: every frame, and each
/// header block decoded by a decoder of its own, as h2's would be.
struct Seen {
    frames: Vec<(u8, u8, u32, Vec<u8>)>,
    blocks: Vec<(u32, Vec<Field>)>,
}

fn server_view(bytes: &[u8]) -> Seen {
    assert_eq!(&bytes[..24], PREFACE);
    let mut at = 24;
    let mut frames = Vec::new();
    let mut blocks = Vec::new();
    let mut decoder = Decoder::new(TABLE_SIZE, MAX_LIST);
    let mut block: Option<(u32, Vec<u8>)> = None;
    while at < bytes.len() {
        let head = &bytes[at..at + 9];
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes(head[5..9].try_into().unwrap());
        let payload = bytes[at + 9..at + 9 + len].to_vec();
        at += 9 + len;
        assert!(len <= MAX_FRAME);
        match kind {
            HEADERS => {
                let (_, fragment) = headers_payload(flags, &payload).unwrap();
                block = Some((stream, fragment.to_vec()));
            }
            CONTINUATION => block.as_mut().unwrap().1.extend_from_slice(&payload),
            _ => {}
        }
        if (kind == HEADERS || kind == CONTINUATION) && flags & END_HEADERS != 0 {
            let (stream, fragment) = block.take().unwrap();
            blocks.push((stream, decoder.decode(&fragment).unwrap()));
        }
        frames.push((kind, flags, stream, payload));
    }
    Seen { frames, blocks }
}

fn rewrite(input: &[u8]) -> Vec<u8> {
    let mut r = Rewriter::default();
    let mut out = Vec::new();
    r.push(input, &mut out).unwrap();
    out
}

fn authority(fields: &[Field]) -> &[u8] {
    &fields.iter().find(|f| f.name == b":authority").unwrap().value
}

#[test]
fn each_accepted_authority_form_is_pinned() {
    for (sent, verdict) in [
        // Go (grpc-go, grpcurl, kube-apiserver) and grpc-dotnet.
        (&b"localhost"[..], Verdict::Keep),
        (b"localhost:50051", Verdict::Keep),
        // gRPC C-core, `unix:/run/sealbroker/grpc.sock` and `unix:///run/...`.
        (b"run%2Fsealbroker%2Fgrpc.sock", Verdict::Replace),
        // gRPC C-core, `unix-abstract:sealbroker` (names are percent-encoded).
        (b"sealbroker", Verdict::Keep),
        (b"sealbroker%00grpc", Verdict::Replace),
        // grpc-java (Netty DomainSocketAddress) and older C-core: the path.
        (b"/run/sealbroker/grpc.sock", Verdict::Replace),
        (b"unix:/run/sealbroker/grpc.sock", Verdict::Replace),
        (b"unix:///run/sealbroker/grpc.sock", Verdict::Replace),
        (b"", Verdict::Replace),
    ] {
        assert_eq!(judge(sent), verdict, "{:?}", sent.escape_ascii().to_string());
    }
    for (sent, why) in [
        (&b"/run/a b.sock"[..], "space"),
        (b"/run/\x07.sock", "control"),
        (b"/run/\xc3\xa9.sock", "non-ASCII"),
        (b"run%2", "'%'"),
        (b"run%zz", "'%'"),
    ] {
        match judge(sent) {
            Verdict::Refuse(reason) => assert!(reason.contains(why), "{reason}"),
            other => panic!("{:?} judged {other:?}", sent.escape_ascii().to_string()),
        }
    }
    assert!(matches!(judge(&[b'a'; 2000]), Verdict::Keep | Verdict::Refuse(_)));
    assert!(matches!(judge(&[b'/'; 2000]), Verdict::Refuse(r) if r.contains("1024")));
}

#[test]
fn c_core_request_reaches_the_server_as_localhost() {
    let block = hex::decode(CCORE_BLOCK).unwrap();
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    input.extend(frame(HEADERS, END_HEADERS, 1, &block));
    input.extend(frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]));
    let seen = server_view(&rewrite(&input));
    let (stream, fields) = &seen.blocks[0];
    assert_eq!(*stream, 1);
    assert_eq!(authority(fields), b"localhost");
    // Everything else arrives as the client sent it.
    let sent = Decoder::new(TABLE_SIZE, MAX_LIST).decode(&block).unwrap();
    assert_eq!(fields.len(), sent.len());
    for (got, want) in fields.iter().zip(&sent) {
        if got.name != b":authority" {
            assert_eq!(got, want);
        }
    }
    assert!(!fields.iter().any(|f| f.name == REFUSED_HEADER.as_bytes()));
    assert_eq!(seen.frames[0].0, 0x4);
    assert_eq!(seen.frames[2], (0x0, END_STREAM, 1, vec![0, 0, 0, 0, 0]));
}

#[test]
fn a_go_client_connection_passes_byte_for_byte() {
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    for stream in [1, 3, 5] {
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            stream,
            &block_of(&request(b"localhost")),
        ));
        input.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\x02hi"));
    }
    let mut r = Rewriter::default();
    let mut out = Vec::new();
    r.push(&input, &mut out).unwrap();
    assert_eq!(out, input);
    assert_eq!(r.rewritten(), 0);
}

#[test]
fn later_requests_decode_after_the_client_indexed_them() {
    // C-core indexes every field of the first request; the second names
    // them by dynamic index, including the rewritten authority.
    let block = hex::decode(CCORE_BLOCK).unwrap();
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    // All but `:method POST` and `:scheme http` (static references) were indexed.
    let entries = Decoder::new(TABLE_SIZE, MAX_LIST).decode(&block).unwrap().len() - 2;
    assert_eq!(entries, 7);
    let second: Vec<u8> = (0..entries as u8).map(|i| 0x80 | (62 + i)).collect();
    input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));
    let mut r = Rewriter::default();
    let mut out = Vec::new();
    r.push(&input, &mut out).unwrap();
    let seen = server_view(&out);
    assert_eq!(seen.blocks.len(), 2);
    assert_eq!(authority(&seen.blocks[1].1), b"localhost");
    let mut first = seen.blocks[0].1.clone();
    first.retain(|f| f.name != b":method" && f.name != b":scheme");
    first.reverse();
    assert_eq!(
        seen.blocks[1].1, first,
        "dynamic indices count from the newest entry"
    );
    assert_eq!(r.rewritten(), 2);
}

#[test]
fn feeding_one_byte_at_a_time_changes_nothing() {
    let mut input = PREFACE.to_vec();
    input.extend(settings());
    input.extend(frame(HEADERS, END_HEADERS | PADDED, 1, &{
        let mut p = vec![3];
        p.extend(block_of(&request(b"/run/sealbroker/grpc.sock")));
        p.extend([0, 0, 0]);
        p
    }));
    input.extend(frame(0x0, 0, 1, &[7; 300]));
    input.extend(frame(0x0, END_STREAM, 1, &[8; 10]));
    let whole = rewrite(&input);
    let mut r = Rewriter::default();
    let mut bytewise = Vec::new();
    for &b in &input {
        if r.direct() > 0 {
            bytewise.push(b);
            r.skipped(1);
        } else {
            r.push(&[b], &mut bytewise).unwrap();
        }
    }
    assert_eq!(bytewise, whole);
    let seen = server_view(&whole);
    assert_eq!(authority(&seen.blocks[0].1), b"localhost");
    assert_eq!(seen.frames.last().unwrap().3, vec![8; 10]);
}

#[test]
fn a_malformed_authority_is_refused_by_name() {
    let mut input = PREFACE.to_vec();
    let mut fields = request(b"/run/\x01bad");
    fields.push(field(REFUSED_HEADER, b"forged"));
    input.extend(frame(HEADERS, END_HEADERS, 1, &block_of(&fields)));
    let seen = server_view(&rewrite(&input));
    let fields = &seen.blocks[0].1;
    assert_eq!(authority(fields), b"localhost");
    let reasons: Vec<_> = fields
        .iter()
        .filter(|f| f.name == REFUSED_HEADER.as_bytes())
        .collect();
    assert_eq!(reasons.len(), 1, "the client's own copy is dropped");
    let reason = String::from_utf8(reasons[0].value.clone()).unwrap();
    assert!(reason.contains("\\x01") && reason.contains("control"), "{reason}");
    assert!(http::HeaderValue::from_bytes(&reasons[0].value).is_ok());
}

#[test]
fn a_large_rewritten_block_is_split_into_continuations() {
    let mut fields = request(b"/run/sealbroker/grpc.sock");
    fields.push(field("x-big", &[b'v'; 40_000]));
    let block = block_of(&fields);
    let mut input = PREFACE.to_vec();
    let (a, rest) = block.split_at(16_000);
    let (b, c) = rest.split_at(16_000);
    input.extend(frame(HEADERS, PRIORITY, 1, &[&[0, 0, 0, 0, 15][..], a].concat()));
    input.extend(frame(CONTINUATION, 0, 1, b));
    input.extend(frame(CONTINUATION, END_HEADERS, 1, c));
    let seen = server_view(&rewrite(&input));
    assert_eq!(seen.blocks[0].1[6].value.len(), 40_000);
    assert_eq!(authority(&seen.blocks[0].1), b"localhost");
    let kinds: Vec<_> = seen.frames.iter().map(|f| f.0).collect();
    assert_eq!(kinds, [HEADERS, CONTINUATION, CONTINUATION]);
    assert_eq!(seen.frames[0].1 & PRIORITY, PRIORITY);
    assert_eq!(&seen.frames[0].3[..5], &[0, 0, 0, 0, 15]);
}

#[test]
fn what_it_cannot_follow_goes_to_the_server_before_a_rewrite_and_closes_after() {
    // Before any rewrite: a stray CONTINUATION passes, and so does all after it.
    let mut input = PREFACE.to_vec();
    input.extend(frame(CONTINUATION, END_HEADERS, 1, b"junk"));
    input.extend(frame(HEADERS, END_HEADERS, 3, &block_of(&request(b"/x"))));
    assert_eq!(rewrite(&input), input);
    // A block that does not decode passes as sent, for the server to refuse.
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, END_HEADERS, 1, &[0x80]));
    assert_eq!(rewrite(&input), input);
    // Not HTTP/2 at all.
    assert_eq!(rewrite(b"GET / HTTP/1.1\r\n\r\n"), b"GET / HTTP/1.1\r\n\r\n");
    // After a rewrite the connection closes instead.
    let mut r = Rewriter::default();
    let mut out = Vec::new();
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, END_HEADERS, 1, &block_of(&request(b"/x"))));
    r.push(&input, &mut out).unwrap();
    let err = r
        .push(&frame(HEADERS, END_HEADERS, 3, &[0x80]), &mut out)
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let mut r = Rewriter::default();
    r.push(&input, &mut Vec::new()).unwrap();
    assert!(r.push(&frame(HEADERS, 0, 3, &[0x82]), &mut out).is_ok());
    assert!(r.push(&frame(0x0, 0, 3, &[]), &mut out).is_err());
}

#[tokio::test]
async fn the_stream_wrapper_serves_what_the_rewriter_makes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client, server) = tokio::io::duplex(64);
    let mut input = PREFACE.to_vec();
    input.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &block_of(&request(b"tmp%2Fs.sock")),
    ));
    input.extend(frame(0x0, END_STREAM, 1, &[9; 5000]));
    let expected = rewrite(&input);
    let writer = tokio::spawn(async move {
        client.write_all(&input).await.unwrap();
        client.shutdown().await.unwrap();
        client
    });
    let mut wrapped = UnixAuthority::new(server);
    let mut got = Vec::new();
    wrapped.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    assert_eq!(got, expected);
}

#[test]
fn blocks_from_another_hpack_implementation_decode() {
    // Python `hpack` 4.1 with Huffman strings and incremental indexing; the
    // second block refers to the first's entries and adds a new value.
    let mut d = Decoder::new(TABLE_SIZE, MAX_LIST);
    let first = d
        .decode(
            &hex::decode(
                "83419262cb6a61051d11d87ea5b189acac8ba0e4eb4089f2b585ed6950958d278ab0bd96000015acb2cb3f",
            )
            .unwrap(),
        )
        .unwrap();
    let second = d.decode(&hex::decode("83bf7e86b0bd9600002f").unwrap()).unwrap();
    let pairs = |fields: &[Field]| -> Vec<(String, String)> {
        fields
            .iter()
            .map(|f| {
                (
                    String::from_utf8_lossy(&f.name).into(),
                    String::from_utf8_lossy(&f.value).into(),
                )
            })
            .collect()
    };
    let expect = |id: &str| {
        vec![
            (":method".to_string(), "POST".to_string()),
            (":authority".into(), "/run/sealbroker/grpc.sock".into()),
            ("x-request-id".into(), id.into()),
        ]
    };
    assert_eq!(pairs(&first), expect("req-0001-rrrr"));
    assert_eq!(pairs(&second), expect("req-0002"));
}
