//! The OpenTelemetry variables, named and read as the OpenTelemetry specification names them, so a
//! platform's or a collector's usual settings work unchanged. Tracing export is off while
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is unset; every other variable only shapes it.

use super::parse::{ConfigError, Var, parse_one_of};
use super::{RawEnv, Secret, redact_url};

/// `OTEL_EXPORTER_OTLP_PROTOCOL`: how spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf`: POST to `<endpoint>/v1/traces` (port 4318 by convention).
    HttpProtobuf,
    /// `grpc`: the collector's gRPC service at the endpoint itself (port 4317 by convention).
    Grpc,
}

/// `OTEL_TRACES_SAMPLER` with its `OTEL_TRACES_SAMPLER_ARG` ratio where it takes one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

#[derive(Debug, Clone)]
pub struct Otel {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: where spans go; `None` turns tracing export off.
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    /// `OTEL_EXPORTER_OTLP_HEADERS` as `(name, value)` pairs, values percent-decoded. Collectors
    /// take their API keys here, so the whole variable is a secret.
    pub headers: Vec<(String, Secret)>,
    /// `OTEL_SERVICE_NAME`: the `service.name` resource attribute.
    pub service_name: String,
    pub sampler: Sampler,
}

/// `service.name` when `OTEL_SERVICE_NAME` is unset (the specification's `unknown_service` helps
/// nobody find the worker's spans).
pub const DEFAULT_SERVICE_NAME: &str = "step-worker";

const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

pub(super) fn parse(raw: &RawEnv) -> Result<Otel, ConfigError> {
    let endpoint = match &raw.otel_exporter_otlp_endpoint {
        None => None,
        Some(v) => {
            let v = v.trim();
            let parsed = reqwest::Url::parse(v)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
            if parsed.is_none() {
                return Err(ConfigError::new(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "an http:// or https:// URL of an OTLP collector, e.g. http://otel-collector:4318",
                    &redact_url(v),
                ));
            }
            Some(v.trim_end_matches('/').to_owned())
        }
    };
    let protocol = match &raw.otel_exporter_otlp_protocol {
        None => OtlpProtocol::HttpProtobuf,
        Some(v) => match parse_one_of(Var::new("OTEL_EXPORTER_OTLP_PROTOCOL", v), &["http/protobuf", "grpc"])? {
            "grpc" => OtlpProtocol::Grpc,
            _ => OtlpProtocol::HttpProtobuf,
        },
    };
    let headers = match &raw.otel_exporter_otlp_headers {
        None => Vec::new(),
        Some(v) => parse_headers(v)?,
    };
    let service_name = raw
        .otel_service_name
        .as_deref()
        .map(str::trim)
        .unwrap_or(DEFAULT_SERVICE_NAME)
        .to_owned();
    let ratio = match &raw.otel_traces_sampler_arg {
        None => 1.0,
        Some(v) => match v.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => r,
            _ => {
                return Err(ConfigError::new(
                    "OTEL_TRACES_SAMPLER_ARG",
                    "a sampling ratio from 0.0 to 1.0",
                    v,
                ));
            }
        },
    };
    let sampler = match &raw.otel_traces_sampler {
        None => Sampler::ParentBasedAlwaysOn,
        Some(v) => match parse_one_of(Var::new("OTEL_TRACES_SAMPLER", v), &SAMPLERS)? {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatio(ratio),
            "parentbased_always_off" => Sampler::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => Sampler::ParentBasedTraceIdRatio(ratio),
            _ => Sampler::ParentBasedAlwaysOn,
        },
    };
    Ok(Otel {
        endpoint,
        protocol,
        headers,
        service_name,
        sampler,
    })
}

/// `name=value` pairs separated by commas, values percent-encoded (the W3C Baggage form the
/// specification uses). The error names the header, never a value: values are credentials.
fn parse_headers(v: &str) -> Result<Vec<(String, Secret)>, ConfigError> {
    let expected = "name=value pairs separated by commas (values percent-encoded), e.g. authorization=Bearer%20<token>";
    let mut headers = Vec::new();
    for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = |what: &str| ConfigError::new("OTEL_EXPORTER_OTLP_HEADERS", expected, what);
        let Some((name, value)) = pair.split_once('=') else {
            return Err(bad("a pair without `=`"));
        };
        let name = name.trim().to_ascii_lowercase();
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(bad(&format!("the header name {name:?}")));
        }
        let value = percent_decode(value.trim())
            .ok_or_else(|| bad(&format!("the value of {name} (not percent-encoded UTF-8)")))?;
        if reqwest::header::HeaderValue::from_str(&value).is_err() {
            return Err(bad(&format!("the value of {name} (not a valid header value)")));
        }
        headers.push((name, Secret::new(value)));
    }
    Ok(headers)
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

impl Otel {
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let (sampler, ratio) = match self.sampler {
            Sampler::AlwaysOn => ("always_on", None),
            Sampler::AlwaysOff => ("always_off", None),
            Sampler::TraceIdRatio(r) => ("traceidratio", Some(r)),
            Sampler::ParentBasedAlwaysOn => ("parentbased_always_on", None),
            Sampler::ParentBasedAlwaysOff => ("parentbased_always_off", None),
            Sampler::ParentBasedTraceIdRatio(r) => ("parentbased_traceidratio", Some(r)),
        };
        // Header names only: their values are credentials.
        let headers = self
            .headers
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join(",");
        vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                self.endpoint.as_deref().map(redact_url).unwrap_or_default(),
            ),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                match self.protocol {
                    OtlpProtocol::HttpProtobuf => "http/protobuf".to_owned(),
                    OtlpProtocol::Grpc => "grpc".to_owned(),
                },
            ),
            ("OTEL_EXPORTER_OTLP_HEADERS", headers),
            ("OTEL_SERVICE_NAME", self.service_name.clone()),
            ("OTEL_TRACES_SAMPLER", sampler.to_owned()),
            ("OTEL_TRACES_SAMPLER_ARG", format!("{:?}", ratio.unwrap_or(1.0))),
        ]
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    use super::{OtlpProtocol, Sampler};

    fn otel(vars: &[(&str, &str)]) -> Result<super::Otel, crate::config::ConfigError> {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string()))).map(|c| c.otel)
    }

    #[test]
    fn export_is_off_without_an_endpoint_and_the_defaults_are_the_specifications() {
        let o = otel(&[]).unwrap();
        assert_eq!(o.endpoint, None);
        assert_eq!(o.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(o.sampler, Sampler::ParentBasedAlwaysOn);
        assert_eq!(o.service_name, "step-worker");
    }

    #[test]
    fn every_variable_is_read() {
        let o = otel(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-honeycomb-team=abc%3Ddef, Authorization=Bearer%20xyz",
            ),
            ("OTEL_SERVICE_NAME", "jobs"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .unwrap();
        assert_eq!(o.endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(o.protocol, OtlpProtocol::Grpc);
        let headers: Vec<_> = o.headers.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
        assert_eq!(
            headers,
            [("x-honeycomb-team", "abc=def"), ("authorization", "Bearer xyz")]
        );
        assert_eq!(o.service_name, "jobs");
        assert_eq!(o.sampler, Sampler::ParentBasedTraceIdRatio(0.25));
    }

    #[test]
    fn bad_values_name_their_variable_and_never_print_a_header_value() {
        for (name, value) in [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cr3t%zz"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "bad name=s3cr3t"),
            ("OTEL_TRACES_SAMPLER", "xray"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
        ] {
            let e = otel(&[(name, value)]).unwrap_err();
            assert_eq!(e.variable, name);
            assert!(!e.to_string().contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn config_check_shows_header_names_not_values() {
        let o = otel(&[("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cr3t")]).unwrap();
        let shown: String = o.describe().into_iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        assert!(shown.contains("OTEL_EXPORTER_OTLP_HEADERS=api-key=********"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
