# Names shared by the rules: every output path is computed here from the validated config.
from llmflow.prior import SPLITS

PRIOR_SHARDS = {
    split: [f"results/prior/{split}/shard-{k}.zarr" for k in range(config["prior"]["shards"][split])]
    for split in SPLITS
}
