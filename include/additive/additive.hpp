// additive: the umbrella header. Structures as types (core/), the MLP family (nn/), the
// Eigen CPU backend (cpu/), optimizers (optim/), data (data/), checkpoints (io/) and the
// experiment engines (exp/). The CUDA backend has its own target and headers (cuda/).
#pragma once

#include "additive/core/concepts.hpp"
#include "additive/core/dispatch.hpp"
#include "additive/core/error.hpp"
#include "additive/core/mask.hpp"
#include "additive/core/params.hpp"
#include "additive/core/structure.hpp"
#include "additive/core/view.hpp"
#include "additive/cpu/backend.hpp"
#include "additive/cpu/mlp_model.hpp"
#include "additive/cpu/parallel.hpp"
#include "additive/data/dataset.hpp"
#include "additive/data/idx.hpp"
#include "additive/exp/progress.hpp"
#include "additive/exp/train.hpp"
#include "additive/io/atomic_file.hpp"
#include "additive/io/checkpoint.hpp"
#include "additive/io/safetensors.hpp"
#include "additive/nn/mlp.hpp"
#include "additive/nn/reference.hpp"
#include "additive/optim/adamw.hpp"
#include "additive/optim/optimizer.hpp"
#include "additive/optim/schedule.hpp"
#include "additive/optim/sgd.hpp"
