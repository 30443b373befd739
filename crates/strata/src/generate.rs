//! `strata generate`: offline generation for one prompt or a file of
//! prompts, through the same executor the server uses.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use strata_core::offline::{run_offline, OfflineRequest};
use strata_core::SamplingParams;

use crate::model_ref::ModelArgs;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt text.
    #[arg(long, conflicts_with = "prompts_file")]
    pub prompt: Option<String>,
    /// A file with one prompt per line; prints one JSON object per prompt.
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    pub max_tokens: u32,
    /// 0 means greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Seed for reproducible sampling (each prompt gets this seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Token budget of one engine step (prefill chunks plus decodes).
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    /// Print token ids along with the text.
    #[arg(long)]
    pub show_token_ids: bool,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let prompts: Vec<String> = match (&args.prompt, &args.prompts_file) {
        (Some(p), None) => vec![p.clone()],
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
        _ => bail!("give --prompt TEXT or --prompts-file FILE"),
    };
    if prompts.is_empty() {
        bail!("the prompts file holds no prompt");
    }
    let params = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        min_p: args.min_p,
        presence_penalty: args.presence_penalty,
        frequency_penalty: args.frequency_penalty,
        seed: args.seed,
        max_tokens: args.max_tokens,
        ignore_eos: args.ignore_eos,
        ..SamplingParams::default()
    };
    params.validate()?;
    let mut loaded = args.model.load()?;
    let tokenizer =
        loaded.tokenizer.take().context("this model has no tokenizer to generate text with")?;
    let requests = prompts
        .iter()
        .map(|p| {
            Ok(OfflineRequest {
                prompt_token_ids: tokenizer.encode(p, true)?,
                params: params.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    let outputs = run_offline(
        &mut loaded.executor,
        &requests,
        tokenizer.eos_token_ids(),
        args.max_num_batched_tokens,
    )?;
    let secs = started.elapsed().as_secs_f64();
    let single = args.prompt.is_some();
    for (i, (req, out)) in requests.iter().zip(&outputs).enumerate() {
        let text = tokenizer.decode(&out.token_ids, true)?;
        if single {
            println!("{text}");
            if args.show_token_ids {
                println!("{:?}", out.token_ids);
            }
        } else {
            let mut line = json!({
                "index": i,
                "prompt": prompts[i],
                "text": text,
                "num_prompt_tokens": req.prompt_token_ids.len(),
                "num_generated_tokens": out.token_ids.len(),
                "finish_reason": out.finish_reason.as_str(),
            });
            if args.show_token_ids {
                line["token_ids"] = json!(out.token_ids);
            }
            if let Some(p) = &out.prefill {
                line["prompt_sources"] = json!({
                    "local_compute": p.local_compute, "local_cache_hit": p.local_cache_hit,
                    "host": p.host, "disk": p.disk, "remote": p.remote,
                    "recomputed_tokens": p.recomputed.kv_load_failure + p.recomputed.preemption,
                });
            }
            println!("{line}");
        }
    }
    let prompt_tokens: usize = requests.iter().map(|r| r.prompt_token_ids.len()).sum();
    let records: Vec<_> = outputs.iter().filter_map(|o| o.prefill).collect();
    let total = |f: fn(&strata_core::PrefillRecord) -> u32| {
        records.iter().map(f).map(u64::from).sum::<u64>()
    };
    tracing::info!(
        local_compute = total(|r| r.local_compute),
        local_cache_hit = total(|r| r.local_cache_hit),
        host = total(|r| r.host),
        disk = total(|r| r.disk),
        remote = total(|r| r.remote),
        recomputed = total(|r| r.recomputed.kv_load_failure + r.recomputed.preemption),
        "prompt tokens by source"
    );
    let generated: usize = outputs.iter().map(|o| o.token_ids.len()).sum();
    tracing::info!(
        requests = requests.len(),
        prompt_tokens,
        generated_tokens = generated,
        secs,
        "done: {:.1} generated tokens/s",
        generated as f64 / secs
    );
    Ok(())
}
