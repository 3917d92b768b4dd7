// Attention as a soft lookup table.
//
// A Python dict answers a query with the value of the one key that matches exactly. Attention
// answers with every value at once, weighted by how well each key matches the query: the
// weights come from a softmax over query-key scores, so they lie in [0, 1] and sum to 1, and the
// answer is the weighted sum of the values. This program builds a small table of keys and values,
// looks up a few queries both ways, and prints where each query spreads its attention.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <tessera/tessera.hpp>

using tessera::Index;
using tessera::Tensor;

namespace {

// Four features per key: furry, has wheels, size, domestic (each roughly in [-1, 1]).
const std::vector<std::string> kNames = {"cat", "dog", "tiger", "car", "bus", "bike"};
const Tensor<float, 2> kKeys{{1.0f, -1.0f, -0.8f, 1.0f},   // cat
                             {1.0f, -1.0f, 0.0f, 1.0f},    // dog
                             {1.0f, -1.0f, 0.9f, -1.0f},   // tiger
                             {-1.0f, 1.0f, 0.3f, 0.4f},    // car
                             {-1.0f, 1.0f, 1.0f, -0.2f},   // bus
                             {-1.0f, 1.0f, -0.7f, 0.6f}};  // bike
// Two numbers per entry: legs, top speed in km/h.
const Tensor<float, 2> kValues{{4, 48}, {4, 45}, {4, 65}, {0, 200}, {0, 100}, {0, 30}};

void print_bar_row(const char* label, const float* w, Index n) {
  std::printf("  %-22s", label);
  for (Index j = 0; j < n; ++j) std::printf(" %6.3f", w[j]);
  std::printf("   ");
  for (Index j = 0; j < n; ++j) {
    const int bar = static_cast<int>(std::lround(w[j] * 8));
    std::printf("%s%.*s", j ? "|" : "", bar, "########");
    std::printf("%*s", 8 - bar, "");
  }
  std::printf("\n");
}

}  // namespace

int main() {
  const Index d = kKeys.dim(1), n = kKeys.dim(0);

  // Queries: one that matches a key exactly, one between two keys, one that matches nothing well.
  const std::vector<std::string> qnames = {"exactly 'dog'", "between cat and dog",
                                           "small and domestic", "no preference"};
  const Tensor<float, 2> raw_queries{{1.0f, -1.0f, 0.0f, 1.0f},
                                     {1.0f, -1.0f, -0.4f, 1.0f},
                                     {0.0f, 0.0f, -0.7f, 0.8f},
                                     {0.0f, 0.0f, 0.0f, 0.0f}};
  const Index nq = raw_queries.dim(0);

  // Match by direction, not length: with unit vectors a key's score is its cosine similarity
  // to the query, so the exact key scores 1 and no key wins by being long. The all-zero query
  // stays zero (l2_normalize divides by max(norm, eps)) and so scores every key 0.
  const auto keys = tessera::l2_normalize(kKeys);
  const auto queries = tessera::l2_normalize(raw_queries);

  std::printf("A lookup table of %td keys (%td features each) and their values (legs, km/h).\n\n",
              n, d);

  // Hard lookup: the value of the single best-matching key, like a dict.
  // scores: [queries, keys] = queries [nq, d] x keys^T [d, n]
  const auto scores = tessera::matmul(queries, keys, {.transpose_b = true});
  std::printf("Hard lookup (argmax of the score, one value returned):\n");
  for (Index q = 0; q < nq; ++q) {
    const auto row = scores[q];
    const Index best = std::max_element(row.data(), row.data() + n) - row.data();
    std::printf("  %-22s -> %-5s  value = (%g, %g)\n", qnames[q].c_str(), kNames[best].c_str(),
                kValues(best, 0), kValues(best, 1));
  }

  // Soft lookup: weights = softmax(q.k / temperature), answer = weights x values.
  for (float temperature : {0.5f, 0.02f}) {
    Tensor<float, 2> scaled(scores);
    scaled.as_array() /= temperature;
    const auto weights = tessera::softmax(scaled);  // [nq, n], each row sums to 1
    // answers: [nq, 2] = weights [nq, n] x values [n, 2]
    const auto answers = tessera::matmul(weights, kValues);

    std::printf("\nSoft lookup, weights = softmax(q.k / %g):\n", temperature);
    std::printf("  %-22s", "query \\ key");
    for (const auto& name : kNames) std::printf(" %6s", name.c_str());
    std::printf("\n");
    for (Index q = 0; q < nq; ++q) print_bar_row(qnames[q].c_str(), weights[q].data(), n);
    for (Index q = 0; q < nq; ++q) {
      const auto w = weights[q];
      const float total = w.as_vector().sum();
      std::printf("  %-22s weights in [%.3f, %.3f], sum %.3f -> value = (%.2f, %.1f)\n",
                  qnames[q].c_str(), w.as_vector().minCoeff(), w.as_vector().maxCoeff(), total,
                  answers(q, 0), answers(q, 1));
    }
  }
  std::printf(
      "\nThe hard lookup returns one stored value, even for the query that matches nothing (a "
      "tie,\n"
      "broken by position). The soft lookup blends the values: at a high temperature every\n"
      "query spreads its attention widely; at a low one the exact query puts nearly all of it\n"
      "on 'dog', the in-between query splits it between its neighbours, and the query with no\n"
      "preference still averages every value evenly.\n");
  return 0;
}
