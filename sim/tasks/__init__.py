"""What the policies are trained on: prompts, a reference policy and the two rewards.

`toy` is the synthetic world (its rewards, exact expectations); `text` builds the same `Task`
from real prompts and a real tokenizer, with `text_rewards` (token classes, text functions).
`sft` trains a neural policy to a teacher's competence; `references` caches those SFT references.
"""
