"""What a step's training is made of, below the methods: phases, the step context, the fitting
loop, evaluation, checkpoints and the base-step cache. Nothing here imports a method or the trainer."""
