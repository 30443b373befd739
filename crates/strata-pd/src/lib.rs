//! strata-pd: prefill/decode disaggregation (in progress).
