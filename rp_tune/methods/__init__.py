"""Layer 3, sparse-training methods: how a mask changes while a trial trains (dynamic sparse
training: SET/RigL; iterative magnitude pruning; strong lottery tickets; GraNet). Reads the
layers below (core, models, sparsity); knows nothing of configs files, Ray or MLflow."""
