"""A trained student handed over as a directory: merged weights, tokenizer and chat template, the LoRA
adapter, the task's prompt as data, a standard-library client, the serving commands and a model card
(``assemble.assemble_bundle``); optionally pushed to the Hugging Face hub (``hub.push_bundle``)."""
