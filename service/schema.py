"""The pipeline's tables (DESIGN.md §1), created when missing and migrated in place.

Every statement is idempotent and adds only what is missing: on a database
that the pipeline already created, no existing row or column is changed.
Adding a column with a constant default is a catalogue-only change in
PostgreSQL 11+, so existing rows read ``directory_exists = true`` without
being rewritten.
"""

STATEMENTS = (
    """
    CREATE TABLE IF NOT EXISTS data_pipeline_tasks (
        task_id varchar(32) PRIMARY KEY,
        task_name varchar(255),
        task_type varchar(50) NOT NULL DEFAULT 'data_workflow'
            CHECK (task_type IN ('data_workflow', 'complete_workflow')),
        status varchar(20) NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'in_progress', 'partial_completed',
                              'completed', 'failed')),
        parameters jsonb NOT NULL,
        result jsonb,
        error_message text,
        created_at timestamp DEFAULT current_timestamp,
        started_at timestamp,
        completed_at timestamp,
        created_type varchar(50) DEFAULT 'api'
            CHECK (created_type IN ('api', 'manual', 'system')),
        by_user varchar(50),
        output_directory text,
        db_name varchar(100),
        directory_exists boolean DEFAULT true,
        updated_at timestamp
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS data_pipeline_task_steps (
        id serial PRIMARY KEY,
        task_id varchar(32) REFERENCES data_pipeline_tasks(task_id) ON DELETE CASCADE,
        execution_id varchar(100),
        step_name varchar(50) NOT NULL
            CHECK (step_name IN ('ddl_generation', 'qa_generation',
                                 'sql_validation', 'training_load')),
        step_status varchar(50) NOT NULL DEFAULT 'pending'
            CHECK (step_status IN ('pending', 'running', 'completed', 'failed')),
        started_at timestamp,
        completed_at timestamp,
        error_message text
    )
    """,
    # The two columns that deletion needs; an older pipeline database lacks them.
    "ALTER TABLE data_pipeline_tasks"
    " ADD COLUMN IF NOT EXISTS directory_exists boolean DEFAULT true",
    "ALTER TABLE data_pipeline_tasks ADD COLUMN IF NOT EXISTS updated_at timestamp",
    "CREATE INDEX IF NOT EXISTS dp_tasks_created_at_idx ON data_pipeline_tasks (created_at DESC)",
    "CREATE INDEX IF NOT EXISTS dp_task_steps_task_id_idx ON data_pipeline_task_steps (task_id)",
)

# Serialises schema set-up between service processes starting at once on one
# database; an arbitrary constant of this service.
SCHEMA_LOCK_KEY = 0x5441534B  # "TASK"

TASK_STATUSES = ("pending", "in_progress", "partial_completed", "completed", "failed")
