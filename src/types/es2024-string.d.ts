// Node 20 has these (V8 11.3); TypeScript puts them in lib ES2024, whose other
// parts (Promise.withResolvers, Object.groupBy) Node 20 lacks.
declare global {
  interface String {
    isWellFormed(): boolean;
    toWellFormed(): string;
  }
}
export {};
