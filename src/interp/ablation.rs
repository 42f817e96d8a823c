//! Seed 003's mean-ablation sweep: replace one hook point at a time by its batch mean and measure the
//! loss on fresh inputs.

use candle_core::Tensor;

use crate::error::Result;
use crate::interp::cache::Names;
use crate::interp::hooks::{mean_ablate, HookSet};
use crate::interp::Interp;
use crate::model::{HookedModel, NoHooks};

/// One row of the sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct AblationRow {
    /// Full hook name (`"baseline"` for the unablated model).
    pub hook: String,
    /// Loss with that hook point mean-ablated.
    pub loss: f64,
}

/// For every hook point except `hook_pos_embed` and `*.hook_result`: the loss on `eval_tokens` when the
/// activation is replaced by its mean over `mean_tokens`. `loss` maps logits to a scalar loss. The first
/// row is the baseline.
pub fn mean_ablation_sweep(
    model: &dyn HookedModel,
    mean_tokens: &Tensor,
    eval_tokens: &Tensor,
    loss: &dyn Fn(&Tensor) -> Result<f64>,
) -> Result<Vec<AblationRow>> {
    let (_, cache) = model.run_with_cache(mean_tokens, &Names::All)?;
    let baseline = loss(&model.forward(eval_tokens, Default::default(), &mut NoHooks)?)?;
    let mut rows = vec![AblationRow {
        hook: "baseline".into(),
        loss: baseline,
    }];
    let tree = model.hook_tree();
    for (name, act) in cache.iter() {
        // W_pos is not a function of the input, so its mean is itself.
        if tree.pos_embed.is_some_and(|h| tree.name(h) == name) {
            continue;
        }
        let mut hooks = HookSet::new(model).add(name, mean_ablate(act.mean_keepdim(0)?))?;
        let logits = model.run_with_hooks(eval_tokens, &mut hooks)?;
        rows.push(AblationRow {
            hook: name.to_string(),
            loss: loss(&logits)?,
        });
    }
    Ok(rows)
}

/// The sweep as CSV: `hook,loss,loss_increase`.
pub fn to_csv(rows: &[AblationRow]) -> String {
    let base = rows.first().map_or(0.0, |r| r.loss);
    let mut s = String::from("hook,loss,loss_increase\n");
    for r in rows {
        s.push_str(&format!("{},{},{}\n", r.hook, r.loss, r.loss - base));
    }
    s
}
