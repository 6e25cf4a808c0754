//! The proxy-wasm ABI (v0.2.1) calls appguard uses, wrapped so that every
//! host status comes back as a `Result`.
//!
//! The SDK's own `hostcalls` panic on any status they did not expect, and
//! decode header maps with `String::from_utf8(..).unwrap()`: one header
//! value with a non-UTF-8 byte would abort the VM. These wrappers never
//! panic: statuses are plain numbers, header bytes are decoded lossily (a
//! mangled security header then simply fails to match).

use std::ptr::{null, null_mut};

use crate::headers::Headers;

/// A host status that is not `Ok` (`1` NotFound, `2` BadArgument, `7` Empty,
/// `8` CasMismatch, `10` InternalFailure, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostError(pub u32);

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            1 => "NotFound",
            2 => "BadArgument",
            3 => "SerializationFailure",
            4 => "ParseFailure",
            5 => "BadExpression",
            6 => "InvalidMemoryAccess",
            7 => "Empty",
            8 => "CasMismatch",
            9 => "ResultMismatch",
            10 => "InternalFailure",
            11 => "BrokenConnection",
            12 => "Unimplemented",
            _ => "unknown status",
        };
        write!(f, "{name} ({})", self.0)
    }
}

/// Why Envoy would not dispatch a call to `cluster`, for a log line, with
/// what most often causes its status: `BadArgument`, a cluster this Envoy
/// does not define (or, for gRPC, one without HTTP/2); `InternalFailure`,
/// a cluster with no host to send to (a DNS name that does not resolve,
/// EDS not fed yet), where the call fails as it starts.
pub fn call_refused(cluster: &str, e: HostError) -> String {
    let hint = match e {
        BAD_ARGUMENT => {
            "is that cluster defined in this Envoy (and, for the rate-limit service, HTTP/2)?"
        }
        INTERNAL_FAILURE => {
            "has that cluster a host to send to (its DNS name resolved, an endpoint up)?"
        }
        _ => {
            "is that cluster defined in this Envoy (and, for the rate-limit service, HTTP/2), \
             with a host to send to?"
        }
    };
    format!("Envoy refused to dispatch it to cluster {cluster:?}: {e}; {hint}")
}

/// `CasMismatch`.
pub const CAS_MISMATCH: HostError = HostError(8);
/// `BadArgument`: for a dispatch, a cluster Envoy does not define.
pub const BAD_ARGUMENT: HostError = HostError(2);
/// `InternalFailure`: for a dispatch, a call that failed as it started (a
/// cluster with no host).
pub const INTERNAL_FAILURE: HostError = HostError(10);
const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const EMPTY: u32 = 7;

/// Header maps.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Map {
    /// The request headers.
    RequestHeaders = 0,
    /// The request trailers (after a body, HTTP/2 and chunked HTTP/1.1).
    RequestTrailers = 1,
    /// The response headers.
    ResponseHeaders = 2,
    /// An HTTP call's response headers.
    HttpCallResponseHeaders = 6,
}

/// Buffers.
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Buffer {
    /// The request body.
    RequestBody = 0,
    /// An HTTP call's response body.
    HttpCallResponseBody = 4,
    /// A gRPC call's response message.
    GrpcReceive = 5,
    /// `plugin_config.configuration`.
    PluginConfiguration = 7,
}

#[cfg(target_arch = "wasm32")]
mod ffi {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, message: *const u8, size: usize) -> u32;
        pub fn proxy_get_log_level(return_level: *mut u32) -> u32;
        pub fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_get_buffer_bytes(
            t: u32,
            start: usize,
            max: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(t: u32, data: *mut *mut u8, size: *mut usize) -> u32;
        pub fn proxy_get_header_map_value(
            t: u32,
            k: *const u8,
            ks: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            t: u32,
            k: *const u8,
            ks: usize,
            v: *const u8,
            vs: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(t: u32, k: *const u8, ks: usize) -> u32;
        pub fn proxy_add_header_map_value(
            t: u32,
            k: *const u8,
            ks: usize,
            v: *const u8,
            vs: usize,
        ) -> u32;
        pub fn proxy_get_property(
            p: *const u8,
            ps: usize,
            data: *mut *mut u8,
            size: *mut usize,
        ) -> u32;
        pub fn proxy_set_property(p: *const u8, ps: usize, v: *const u8, vs: usize) -> u32;
        pub fn proxy_get_shared_data(
            k: *const u8,
            ks: usize,
            data: *mut *mut u8,
            size: *mut usize,
            cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            k: *const u8,
            ks: usize,
            v: *const u8,
            vs: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_send_local_response(
            status: u32,
            details: *const u8,
            details_size: usize,
            body: *const u8,
            body_size: usize,
            headers: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        pub fn proxy_continue_stream(stream_type: u32) -> u32;
        pub fn proxy_set_effective_context(context_id: u32) -> u32;
        pub fn proxy_define_metric(t: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
        pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    }
}

/// Native builds (unit tests, the CLI with the adapter compiled in) have no
/// host: every call reports InternalFailure.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::missing_safety_doc, clippy::too_many_arguments, missing_docs)]
mod ffi {
    const FAIL: u32 = 10;
    pub unsafe fn proxy_log(_: u32, _: *const u8, _: usize) -> u32 {
        FAIL
    }
    pub unsafe fn proxy_get_log_level(_: *mut u32) -> u32 {
        FAIL
    }
    pub unsafe fn proxy_get_current_time_nanoseconds(_: *mut u64) -> u32 {
        FAIL
    }
    pub unsafe fn proxy_set_tick_period_milliseconds(_: u32) -> u32 {
        FAIL
    }
    pub unsafe fn proxy_get_buffer_bytes(
        _: u32,
        _: usize,
        _: usize,
        _: *mut *mut u8,
        _: *mut usize,
    ) -> u32 {
        FAIL
    }
    pub unsafe fn proxy_get_header_map_pairs(_: u32, _: *mut *mut u8, _: *mut usize) -> u32 {
        FAIL
    }
    pub unsafe fn proxy_get_header_map_value(
        _: u32,
        _: *const u8,
        _: usize,
        _: *mut *mut u8,
        _: *mut usize,
    ) -> u32 {
        FAIL
    }
    pub unsafe fn proxy_replace_header_map_value(
        _: u32,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
    ) -> u32 {
        FAIL
    }
    pub unsafe fn proxy_remove_header_map_value(_: u32, _: *const u8, _: usize) -> u32 {
        FAIL
    }
    pub unsafe fn proxy_add_header_map_value(
        _: u32,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
    ) -> u32 {
        FAIL
    }
    pub unsafe fn proxy_get_property(
        _: *const u8,
        _: usize,
        _: *mut *mut u8,
        _: *mut usize,
    ) -> u32 {
        FAIL
    }
    pub unsafe fn proxy_set_property(_: *const u8, _: usize, _: *const u8, _: usize) -> u32 {
        FAIL
    }
    pub unsafe fn proxy_get_shared_data(
        _: *const u8,
        _: usize,
        _: *mut *mut u8,
        _: *mut usize,
        _: *mut u32,
    ) -> u32 {
        FAIL
    }
    pub unsafe fn proxy_set_shared_data(
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: u32,
    ) -> u32 {
        FAIL
    }
    pub unsafe fn proxy_send_local_response(
        _: u32,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: i32,
    ) -> u32 {
        FAIL
    }
    pub unsafe fn proxy_continue_stream(_: u32) -> u32 {
        FAIL
    }
    pub unsafe fn proxy_set_effective_context(_: u32) -> u32 {
        FAIL
    }
    pub unsafe fn proxy_define_metric(_: u32, _: *const u8, _: usize, _: *mut u32) -> u32 {
        FAIL
    }
    pub unsafe fn proxy_increment_metric(_: u32, _: i64) -> u32 {
        FAIL
    }
}

fn check(status: u32) -> Result<(), HostError> {
    if status == OK {
        Ok(())
    } else {
        Err(HostError(status))
    }
}

/// Takes ownership of a buffer the host allocated through the SDK's
/// `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes).
///
/// # Safety
/// `data` must come from the host with `size` as written by the same call.
unsafe fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: the allocator gave a boxed slice of `size` bytes, which has
    // the layout of a Vec with capacity `size`.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Writes a line to Envoy's log (errors ignored: there is nowhere to
/// report them).
pub fn log(level: u32, message: &str) {
    // SAFETY: live slice.
    let _ = unsafe { ffi::proxy_log(level, message.as_ptr(), message.len()) };
}

/// A `log` backend writing through [`log()`], set once per VM. Unlike the
/// SDK's logger it never panics when the host refuses a line.
pub struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => 0,
            log::Level::Debug => 1,
            log::Level::Info => 2,
            log::Level::Warn => 3,
            log::Level::Error => 4,
        };
        log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// Installs [`HostLogger`] (once) with the given maximum level, and a panic
/// hook that logs the panic before the VM aborts.
pub fn init_logging(max: log::LevelFilter) {
    if log::set_logger(&LOGGER).is_ok() {
        std::panic::set_hook(Box::new(|info| log(5, &info.to_string())));
    }
    log::set_max_level(max);
}

/// Maps Envoy's level (0 trace … 5 critical) onto a `log` filter.
pub fn level_filter(level: u32) -> log::LevelFilter {
    match level {
        0 => log::LevelFilter::Trace,
        1 => log::LevelFilter::Debug,
        2 => log::LevelFilter::Info,
        3 => log::LevelFilter::Warn,
        4 => log::LevelFilter::Error,
        _ => log::LevelFilter::Off,
    }
}

/// Envoy's log level for this plugin (0 trace … 5 critical).
pub fn log_level() -> Result<u32, HostError> {
    let mut level = 2u32;
    // SAFETY: the host writes one u32.
    check(unsafe { ffi::proxy_get_log_level(&mut level) })?;
    Ok(level)
}

/// Host time in nanoseconds since the epoch.
pub fn now_nanos() -> Result<u64, HostError> {
    let mut t = 0u64;
    // SAFETY: the host writes one u64.
    check(unsafe { ffi::proxy_get_current_time_nanoseconds(&mut t) })?;
    Ok(t)
}

/// Sets the root context's tick period.
pub fn set_tick_period_ms(ms: u32) -> Result<(), HostError> {
    // SAFETY: plain value.
    check(unsafe { ffi::proxy_set_tick_period_milliseconds(ms) })
}

/// Bytes of a buffer (`None` when absent or empty).
pub fn buffer(t: Buffer, start: usize, max: usize) -> Result<Option<Vec<u8>>, HostError> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: out-pointers to locals; the host allocates the result.
    match unsafe { ffi::proxy_get_buffer_bytes(t as u32, start, max, &mut data, &mut size) } {
        OK => Ok(Some(unsafe { take(data, size) }).filter(|v| !v.is_empty())),
        NOT_FOUND | EMPTY => Ok(None),
        s => Err(HostError(s)),
    }
}

/// A whole header map (request headers or trailers) as one [`Headers`]
/// value, names and values decoded lossily: one host call, and two
/// allocations however many headers there are.
pub fn map_headers(t: Map) -> Result<Headers, HostError> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: out-pointers to locals; the host allocates the result.
    check(unsafe { ffi::proxy_get_header_map_pairs(t as u32, &mut data, &mut size) })?;
    let bytes = unsafe { take(data, size) };
    Headers::from_wire(&bytes).ok_or(HostError(3))
}

/// One header value (lossy), or `None`.
pub fn map_value(t: Map, key: &str) -> Result<Option<String>, HostError> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: key is a live slice; out-pointers to locals.
    match unsafe {
        ffi::proxy_get_header_map_value(t as u32, key.as_ptr(), key.len(), &mut data, &mut size)
    } {
        OK => Ok(Some(
            String::from_utf8_lossy(&unsafe { take(data, size) }).into_owned(),
        )),
        NOT_FOUND => Ok(None),
        s => Err(HostError(s)),
    }
}

/// Sets (replaces) a header.
pub fn set_header(t: Map, key: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: live slices.
    check(unsafe {
        ffi::proxy_replace_header_map_value(
            t as u32,
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Removes a header (every value).
pub fn remove_header(t: Map, key: &str) -> Result<(), HostError> {
    // SAFETY: live slice.
    check(unsafe { ffi::proxy_remove_header_map_value(t as u32, key.as_ptr(), key.len()) })
}

/// Adds a header value.
pub fn add_header(t: Map, key: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: live slices.
    check(unsafe {
        ffi::proxy_add_header_map_value(
            t as u32,
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// A property by path (e.g. `["source", "address"]`).
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
    let mut p = Vec::new();
    for seg in path {
        p.extend_from_slice(seg.as_bytes());
        p.push(0);
    }
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: live slice; out-pointers to locals.
    match unsafe { ffi::proxy_get_property(p.as_ptr(), p.len(), &mut data, &mut size) } {
        OK => Ok(Some(unsafe { take(data, size) })),
        NOT_FOUND | EMPTY => Ok(None),
        s => Err(HostError(s)),
    }
}

/// Sets the stream's filter state `wasm.<name>` to `value` (Envoy's
/// `set_property` on a one-segment path), which access logs can print with
/// `%FILTER_STATE(wasm.<name>:PLAIN)%`.
pub fn set_filter_state(name: &str, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: live slices for the duration of the call.
    match unsafe { ffi::proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) }
    {
        OK => Ok(()),
        s => Err(HostError(s)),
    }
}

/// Shared data: the value and its CAS, or `None`.
pub fn shared_get(key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
    let (mut data, mut size, mut cas) = (null_mut(), 0usize, 0u32);
    // SAFETY: live slice; out-pointers to locals.
    match unsafe {
        ffi::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
    } {
        OK => Ok(Some((unsafe { take(data, size) }, cas))),
        NOT_FOUND => Ok(None),
        s => Err(HostError(s)),
    }
}

/// Shared data: writes if the CAS still matches (0 = unconditional).
pub fn shared_set(key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
    // SAFETY: live slices.
    check(unsafe {
        ffi::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

/// Answers the request locally; a gRPC request gets `grpc_status` (see
/// [`crate::decision::grpc_status`]).
pub fn send_local_response(
    status: u32,
    grpc_status: i32,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), HostError> {
    let h = encode_pairs(headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
    // SAFETY: live slices.
    check(unsafe {
        ffi::proxy_send_local_response(
            status,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            h.as_ptr(),
            h.len(),
            grpc_status,
        )
    })
}

/// Resumes a paused request.
pub fn resume_request() -> Result<(), HostError> {
    // SAFETY: plain value (0 = the HTTP request stream).
    check(unsafe { ffi::proxy_continue_stream(0) })
}

/// Makes context `context_id` the one the rest of this call into the VM
/// acts on: its headers, local reply and resuming (Envoy 1.40 defers the
/// last two until the VM call returns). Calls dispatched meanwhile are
/// still made for the plugin's root context, whatever context is in
/// effect, and their answers read from it; the SDK hands an answer to the
/// context it was running at the dispatch. Envoy resets the effective
/// context when the VM call returns. `BadArgument` for a context Envoy no
/// longer has. The SDK's own `set_effective_context` aborts the VM on any
/// other status.
pub fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    // SAFETY: plain value.
    check(unsafe { ffi::proxy_set_effective_context(context_id) })
}

/// Dispatches an HTTP call through a cluster; returns its token.
///
/// This one goes through the SDK: its dispatcher routes the response to the
/// calling context only for tokens it registered itself. The SDK maps the
/// statuses Envoy returns for this call (BadArgument, InternalFailure) to
/// errors.
pub fn http_call(
    cluster: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout_ms: u32,
) -> Result<u32, HostError> {
    proxy_wasm::hostcalls::dispatch_http_call(
        cluster,
        headers.to_vec(),
        body,
        Vec::new(),
        std::time::Duration::from_millis(u64::from(timeout_ms)),
    )
    .map_err(|s| HostError(s as u32))
}

/// Dispatches a unary gRPC call through a cluster; returns its token.
/// Through the SDK, for the same reason as [`http_call`]. Envoy 1.40
/// answers an unknown cluster with ParseFailure, which the SDK maps to an
/// error; it would answer BadArgument (on which the SDK aborts the VM) only
/// for a cluster name that parses as a serialized `GrpcService`, and the
/// configuration refuses such names (`config::reads_as_protobuf`).
pub fn grpc_call(
    cluster: &str,
    service: &str,
    method: &str,
    metadata: &[(&str, &[u8])],
    message: &[u8],
    timeout_ms: u32,
) -> Result<u32, HostError> {
    proxy_wasm::hostcalls::dispatch_grpc_call(
        cluster,
        service,
        method,
        metadata.to_vec(),
        Some(message),
        std::time::Duration::from_millis(u64::from(timeout_ms)),
    )
    .map_err(|s| HostError(s as u32))
}

/// Defines a counter; returns its id.
pub fn define_counter(name: &str) -> Result<u32, HostError> {
    define_metric(0, name)
}

/// Defines a gauge; returns its id.
pub fn define_gauge(name: &str) -> Result<u32, HostError> {
    define_metric(1, name)
}

fn define_metric(kind: u32, name: &str) -> Result<u32, HostError> {
    let mut id = 0u32;
    // SAFETY: live slice; out-pointer to a local.
    check(unsafe { ffi::proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Adds to a counter, or to a gauge (`by` < 0 subtracts).
pub fn increment(id: u32, by: i64) -> Result<(), HostError> {
    // SAFETY: plain values.
    check(unsafe { ffi::proxy_increment_metric(id, by) })
}

/// Encodes pairs in the ABI's map encoding ([`crate::wire`]).
pub fn encode_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    crate::wire::encode_pairs(pairs)
}
