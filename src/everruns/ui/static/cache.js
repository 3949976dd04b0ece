// Prompt-cache hit ratio of a run: cached input tokens / input tokens (issue 13).
// "–" before any input; the tooltip gives the counts.

export function cacheHits(usage) {
  const input = Number(usage.input || 0);
  const cached = Number(usage.cached || 0);
  if (!input) return { text: "–", title: "no input tokens yet" };
  return {
    text: `${Math.round((100 * cached) / input)}%`,
    title: `${cached} of ${input} input tokens read from the prompt cache`,
  };
}
