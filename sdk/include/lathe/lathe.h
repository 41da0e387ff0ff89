/* lathe/lathe.h — everything a plugin or embedding program needs. */
#ifndef LATHE_LATHE_H
#define LATHE_LATHE_H

#include "abi.h"
#include "status.h"
#include "rng.h"
#include "tensor.h"
#include "ops.h"
#include "backend.h"
#include "config.h"
#include "env.h"
#include "plugin.h"
#include "model.h"
#include "data.h"
#include "loss.h"
#include "optim.h"
#include "parallel.h"
#include "peft.h"
#include "reward.h"
#include "logger.h"
#include "tokenizer.h"
#include "chat.h"
#include "weights.h"
#include "generate.h"
#include "policy.h"
#include "segment.h"

#endif
