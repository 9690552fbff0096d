// The deep import used by src/shared/window.ts has no declaration of its own.
declare module 'cron-parser/dist/CronExpressionParser' {
  export { CronExpressionParser } from 'cron-parser';
}
