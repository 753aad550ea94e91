#include "runtime/api/phoenix.h"

#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdio>

#include "runtime/api/job.h"
#include "runtime/api/train_flags.h"
#include "runtime/core/error.h"
#include "runtime/core/log.h"
#include "runtime/core/signals.h"
#include "runtime/train/worker_loop.h"

namespace phoenix {

struct Worker::Impl {
  phx::train::DistJob* job = nullptr;
  phx::train::ExternalModel model;
  std::unique_ptr<phx::train::WorkerLoop> loop;
  int64_t next = 0;  // the step step() expects
  bool ended = false;
};

int Worker::index() const { return impl_->job->layout().workerIndex(impl_->job->rank()); }
int Worker::count() const { return impl_->job->layout().workers(); }
bool Worker::chief() const { return impl_->loop ? impl_->loop->chief() : index() == 0; }

void Worker::start(int64_t n, const float* init, int64_t steps, std::function<Eval(const float*)> evaluate,
                   const std::string& name) {
  if (impl_->loop) PHX_USER_ERROR("Worker::start was called twice; call it once, before the first step");
  if (n <= 0 || !init) PHX_USER_ERROR("Worker::start: a model needs at least one parameter and its initial values");
  phx::train::ExternalModel& m = impl_->model;
  m.params = n;
  m.init.assign(init, init + n);
  m.totalSteps = steps;
  m.name = name;
  if (evaluate)
    m.evaluate = [evaluate](const float* w) {
      const Eval e = evaluate(w);
      return phx::train::EvalResult{e.accuracy, e.loss};
    };
  impl_->loop = impl_->job->externalWorker(m);
  impl_->loop->begin();
  impl_->next = impl_->loop->startStep();
}

int64_t Worker::firstStep() const { return impl_->loop ? impl_->loop->startStep() : 0; }
int64_t Worker::steps() const { return impl_->model.totalSteps; }
int64_t Worker::size() const { return impl_->model.params; }

float* Worker::weights() {
  if (!impl_->loop) PHX_USER_ERROR("Worker::weights before Worker::start: declare the model first");
  return impl_->loop->hostParams();
}

float* Worker::gradient() {
  if (!impl_->loop) PHX_USER_ERROR("Worker::gradient before Worker::start: declare the model first");
  return impl_->loop->hostGrads();
}

bool Worker::step(int64_t step, double loss, int samples) {
  if (!impl_->loop) PHX_USER_ERROR("Worker::step before Worker::start: declare the model first");
  if (impl_->ended) PHX_USER_ERROR("Worker::step after the job stopped (step returned false): leave the loop");
  if (step != impl_->next)
    PHX_USER_ERROR("Worker::step(", step, "): the next step is ", impl_->next,
                   "; call step once per step, in order, from firstStep()");
  if (step >= impl_->model.totalSteps)
    PHX_USER_ERROR("Worker::step(", step, "): the job has ", impl_->model.totalSteps, " steps (0 .. ",
                   impl_->model.totalSteps - 1, ")");
  if (!std::isfinite(loss)) loss = 0;
  const bool more = impl_->loop->step(step, samples, loss);
  ++impl_->next;
  if (!more || impl_->next == impl_->model.totalSteps) {
    // The run's end, inside the last step: the caller's evaluation and data are still alive.
    impl_->ended = true;
    impl_->loop->end();
    return false;
  }
  return true;
}

std::vector<std::string> flags(int argc, char** argv) {
  std::vector<std::string> out;
  for (int i = 1; i < argc; ++i) out.emplace_back(argv[i]);
  return out;
}

int run(const std::vector<std::string>& flagList, const std::function<void(Worker&)>& train) {
  phx::Config cfg;
  CLI::App app{"Phoenix worker"};
  phx::api::addTrainFlags(app, cfg);
  try {
    std::vector<std::string> args(flagList.rbegin(), flagList.rend());  // CLI11 parses reversed
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::fprintf(stderr, "phoenix: error: %s (flags are those of `phoenix train --help`)\n", e.what());
    return 2;
  }
  // Flags about Phoenix's own models and data decide nothing here: the caller's program does.
  for (const CLI::Option* o : app.get_options()) {
    if (o->count() == 0 || o->get_lnames().empty()) continue;
    const std::string name = "--" + o->get_lnames().front();
    for (const char* own : {"--model", "--data-dir", "--batch", "--epochs", "--steps", "--device", "--threads",
                            "--eval-batch", "--eval-samples", "--audit-samples", "--group-reduce"})
      if (name == own) {
        std::fprintf(stderr, "phoenix: error: %s is about Phoenix's own models and data; a program that "
                             "trains its own model decides that itself (drop the flag)\n", own);
        return 2;
      }
    if (!(o->results().size() == 1 && o->results()[0] == o->get_default_str())) cfg.given.push_back(name);
  }
  phx::signals::startSignalThread();  // before any other thread: the stop signals go to it
  try {
    phx::log::setLevel(phx::log::parseLevel(cfg.logLevel));
  } catch (const phx::UserError& e) {
    std::fprintf(stderr, "phoenix: error: %s\n", e.what());
    return 2;
  }
  phx::api::prepareTrainConfig(cfg);
  if (!phx::api::launchedByMpi()) {
    std::fprintf(stderr, "phoenix: error: a program that trains its own model runs as an MPI job: start it "
                         "with `mpirun -n N` (at least one server and one worker)\n");
    return 2;
  }
  return phx::api::runTrainJob(cfg, [&](phx::train::DistJob& job) {
    Worker::Impl impl;
    impl.job = &job;
    Worker w(&impl);
    train(w);
    if (!impl.loop)
      PHX_USER_ERROR("the training function returned without Worker::start: declare the model "
                     "(parameter count, initial values, steps) on every worker");
    if (!impl.ended)
      PHX_USER_ERROR("the training function returned after ", impl.next, " of ", impl.model.totalSteps,
                     " steps; call Worker::step for every step (until it returns false)");
  }, [] {
    PHX_USER_ERROR("a job of one process has no server: start it with `mpirun -n N`, N >= 2 "
                   "(one server and at least one worker)");
  });
}

}  // namespace phoenix
