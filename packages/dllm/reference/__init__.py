"""forecache.dllm.reference: the small diffusion LM the project trains itself.

- ``vocab``: one token per word of the tasks, as a fast tokenizer ``AutoTokenizer`` loads;
- ``tasks``: key-value retrieval over 300+ tokens, addition, copy and reverse, generated in code;
- ``evaluate``: task accuracy through the LLaDA sampler;
- ``train``: the training script (LLaDA's SFT objective) that makes ``models/llada-tasks``.
"""
