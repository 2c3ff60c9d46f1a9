"""The word lists of plain-language goals (see discovery.goal): the vocabulary shown to users, the words a goal may
use that change nothing (read and listed as ignored), and the words that would change the job but name something
the service cannot do (refused, with the reason).

A word left over after the phrase table has been read is

- grammar (``a``, ``the``, ``for``, ...): dropped silently;
- neutral (:data:`FILLER`, :data:`NEUTRAL`; also their plural / -ing / -ed forms): dropped and listed in
  ``GoalParse.ignored`` — "sparse", "local", "plasticity", "ordinary" describe every rule the service finds;
- refused (:data:`REFUSED`): the goal asks for something else (a convolutional net, CIFAR, spiking neurons) and
  is a GoalError with the reason and the vocabulary;
- unknown (anything else, a stray number included): a GoalError too — nothing is guessed silently.
"""

from __future__ import annotations


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: Function words: dropped without a note.
GRAMMAR: frozenset[str] = _words(
    "a an the and or of in on for to from by via with using use at per each into as is are be it its that which "
    "this these those then than so such under over about within through there my our your will should could "
    "does do")

#: Words that carry no meaning for the spec (the generic words of a request).
FILLER: frozenset[str] = GRAMMAR | _words(
    "find discover search learn learns learning learned learner rule rules plasticity synaptic local "
    "biologically plausible bio-plausible network networks net nets mlp neural deep model data dataset datasets "
    "set sets image images task tasks classes class run job train training meta meta-training please me i we "
    "want would like can you new good best better some rule's term terms plus also feedback layer layers weight "
    "weights hidden units unit dense fully connected how what under where pool rule-family family")

#: Descriptive words that change nothing the service does: every rule it finds is local, sparse (a few terms),
#: online and symbolic; "fit", "converges", "classification" restate the job.
NEUTRAL: frozenset[str] = _words(
    "sparse sparsest parsimonious simple simplest small compact interpretable symbolic ordinary standard usual "
    "plain classic classical vanilla typical default normal regular basic general generic common "
    "fit fits fitting meta-learn meta-learned estimate identify infer optimize optimise tune get give make build "
    "converge converges converging convergent convergence stable stability steady settle settles "
    "classification classify classifying classifier recognition recognize recognise handwritten digit "
    "paper paper's papers published literature reference original authors "
    "rate rates coefficient coefficients theta term-wise candidate candidates structure equation formula "
    "update updates dynamics activity activities neuron neurons synapse synapses cell cells "
    "brain brain-like biological biology plausibly realistic "
    "experiment experiments study benchmark benchmarks problem setting scenario regime case "
    "just exactly precisely "
    "one-shot few-shot multi-way way ways shot shots episode episodic "
    "rnn-style recurrently")

#: Words that would change the job into one the service cannot run: word → why (the goal is refused).
REFUSED: dict[str, str] = {
    **dict.fromkeys(["convolutional", "conv", "cnn", "cnns", "convnet", "resnet"],
                    "convolutional networks are not supported (the feedforward family is a dense MLP)"),
    **dict.fromkeys(["transformer", "transformers", "attention"], "transformers are not supported"),
    **dict.fromkeys(["lstm", "gru", "lstms", "bptt", "sequence", "sequences", "temporal"],
                    "sequence models are not supported (the recurrent family learns fixed points)"),
    **dict.fromkeys(["spiking", "spike", "spikes", "snn", "stdp"], "spiking networks are not supported"),
    **dict.fromkeys(["cifar", "cifar10", "cifar-10", "imagenet", "svhn", "fashion", "omniglot"],
                    "this data set is not available (mnist, digits, digits28, emnist, synthetic)"),
    **dict.fromkeys(["reinforcement", "rl", "policy"],
                    "policy learning is not supported; a reward-modulated plasticity rule of a reservoir readout is "
                    "(say 'reward-modulated' or 'three-factor')"),
    **dict.fromkeys(["regression"], "the feedforward family learns classification episodes, not regression"),
}

VOCABULARY: dict[str, list[str]] = {
    "depth": ["depth-N", "N layers", "N-layer", "works across depths A to B (a task distribution)"],
    "width": ["width N", "widths 784-64-10", "tiny"],
    "learning": ["online (batch is not supported)"],
    "family": ["unsupervised / principal components / PCA (the unsupervised Hebbian family: y = W x on centred "
               "digits, open search over the 17-term Hebbian library; 'N components' sets k, 'reconstruction' or "
               "'subspace objective', 'N passes'; 'hebbian' and 'oja' only describe the goal, they are no hint)",
               ("reward-modulated / three-factor / reservoir (the reward family: a reservoir readout on a motor "
                "task of S5, open search over the 18-term three-factor library; 'butterfly' or 'motor task 1', "
                "'two-joint arm' or 'motor task 2'; 'at most N terms')"),
               "recurrent / fixed points / fixed-point rnn (the recurrent fixed-point family on mnist, docs/science.md "
               "S2; 'N units' sets N; terms dW1, dW3, dW4, oja, decay fit as named; no term named → open forward "
               "search over the recurrent library, 'at most N terms' bounds it)"],
    "feedback": [
        "feedback alignment / fa",
        "backprop / bp / weight transport",
        "direct feedback alignment / dfa",
        "sign-symmetric",
    ],
    "dataset": ["mnist", "digits", "digits28", "emnist", "synthetic", "my dataset <name> / upload:<id>"],
    "terms": [
        "pseudo-gradient",
        "error-Hebbian / eHebb",
        "decay",
        "Oja",
        "Hebbian",
        "F0..F9",
        "all ten / bio10",
        "paper3 / three-term / the paper's three terms",
        "library / gated library (the pool an open search runs over; the default when no term is named)",
        "forward selection / backward elimination / l1 path",
        "at most N terms",
        "only",
    ],
    "init": ["bad init (scale 3)", "large init (scale 3)", "small init (scale 0.3)", "init scale X"],
    "training": [
        "N episodes",
        "N eval episodes",
        "N-way",
        "K-shot",
        "Q queries",
        "seed S",
        "lr X",
        "l1 X",
        "meta-batch N",
        "beta X",
    ],
    "resources": ["gpu", "cpu"],
}