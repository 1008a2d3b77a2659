"""
What train_gpt2.py includes, as llm.c's train_gpt2.c includes its llmc/*.h headers: everything a learner can take
as given while reading how GPT-2 trains, one module per concern. No module here imports the trainer.

    startup     what must happen before numpy and numba load: how threads share the cores, a quiet Ctrl-C
    files       errors, llm.c's 256-int file header, durable writes (temporary name, fsync, rename)
    rand        llm.c's Mersenne Twister and xorshift random number generators, to the bit
    tokenizer   GPT-2's BPE (tiktoken, offline from the files in llmc/gpt2/), llm.c's tokenizer file, text output
    data        llm.c's token shards written, and Tiny Shakespeare prepared for the default run
    hf          Hugging Face GPT-2 folders and hub names: config.json and model.safetensors
    eval        llm.c's multiple-choice eval file (HellaSwag) and its acc_norm score
    mpi         the processes of an mpirun: rank, all-reduce, ZeRO-1's reduce-scatter and all-gather
    state       llm.c's training state file: AdamW's moments, the data loader's position, the run's settings
    run_dir     the run directory (-o): its lock, checkpoints, main.log, resuming and pruning
    cli         the command line: flags, their checks and defaults, what a run prints before it starts, and one
                line and an exit status for every error
"""
