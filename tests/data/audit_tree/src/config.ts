export const settings = {
  geminiKey: "{{fake AIzaSy +b64url33}}",
  openaiKey: "sk-proj-...",
  build: "3f2a9c1e-8b7d-4c6a-9e5f-1a2b3c4d5e6f",
  digest: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
};
