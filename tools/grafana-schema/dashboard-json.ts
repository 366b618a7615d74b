// The type a dashboard's JSON model must have: @grafana/schema's `Dashboard`, with every
// string enum (FieldColorModeId, ThresholdsMode, ...) replaced by the union of its values,
// since JSON holds the values, not the enum members. Object literals typed with it get
// TypeScript's excess-property check, so unknown keys fail as well as wrong types.
import type { Dashboard } from "@grafana/schema";

type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Json<U>[]
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;

export type DashboardJson = Json<Dashboard>;
